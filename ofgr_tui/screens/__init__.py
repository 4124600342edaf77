"""One screen per file. Screens post ``ofgr_tui.messages`` up; the app routes them."""
