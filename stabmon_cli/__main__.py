"""`python -m stabmon_cli` is the `stabmon` console script."""

from stabmon_cli import main

if __name__ == "__main__":
    main()
