print("parley-server")
