from treemap.cli import main

main()
