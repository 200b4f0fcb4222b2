error("a configuration that raises")
