from ofgr_core.cli import main

main()
