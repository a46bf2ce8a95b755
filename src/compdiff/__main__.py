import sys

from compdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
