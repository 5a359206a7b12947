-- Runs the cxone command with the package and module found through LUA_PATH/LUA_CPATH (the
-- build tree being benchmarked), unlike bin/cxone, which uses the tree beside it.
os.exit(require("cxone.cli").main(arg))
