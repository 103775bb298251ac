print("published by imageservice")
