"""`platform-apply`: the command line for operators and CI (CONTRACT.md, "Command line").

argparse (stdlib): subcommands and flags are all it needs; a dependency is one more install per CI runner.

One module per subcommand (`apply`, `approve`, `reject`, `locks`, `doctor`,
`sign`); `main` builds the parser and maps failures to exit codes.
"""
