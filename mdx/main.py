"""`python -m mdx.main --config=experiments/X.py --workdir=DIR --mode=train|eval|export|predict`:
the same as `python -m mdx main ...` (mdx.commands.main), kept because scripts and the design
documents name it. Importing this module does nothing."""

import sys

if __name__ == "__main__":
  from mdx import commands

  commands.run("main", sys.argv[1:])
