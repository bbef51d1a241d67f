"""detect.py: filled in by a later issue of the roadmap (see README.md)."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_known_args(argv)
    sys.exit('detect.py is not implemented yet: it arrives with a later issue of the roadmap (see README.md).')


if __name__ == '__main__':
    main()
