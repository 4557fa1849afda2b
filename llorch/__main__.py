from llorch.cli import main

main()
