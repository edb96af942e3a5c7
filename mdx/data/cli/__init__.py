"""The data command-line tools, one module each:
python -m mdx.data.cli.prepare | split | audit | consensus."""
