"""Commands: one per file, each with main(argv); nothing imports them but ``__main__``."""
