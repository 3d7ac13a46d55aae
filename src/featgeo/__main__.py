from featgeo.cli import main

main()
