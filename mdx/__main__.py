"""The front door: `python -m mdx COMMAND [flags]` runs mdx.commands.COMMAND (./launch.sh COMMAND
calls it); without a command it lists them."""

import sys

from mdx import commands

if __name__ == "__main__":
  if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
    print(commands.usage(), file=sys.stdout if len(sys.argv) > 1 else sys.stderr)
    sys.exit(0 if len(sys.argv) > 1 else 2)
  commands.run(sys.argv[1], sys.argv[2:])
