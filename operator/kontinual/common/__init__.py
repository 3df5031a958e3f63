"""The bottom both wings and the controller may use: API names, the result contract, the Roboflow client, YAML."""
