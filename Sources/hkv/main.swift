print("hkv")
