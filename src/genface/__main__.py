from genface.cli import main

main()
