"""`python -m stabmon` is the `stabmon` console script."""

from stabmon.cli import main

if __name__ == "__main__":
    main()
