from imp_core.cli.app import main

main()
