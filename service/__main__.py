"""`python -m service` runs the MiniVault CLI."""

from service.cli.main import main

if __name__ == "__main__":
    main()
