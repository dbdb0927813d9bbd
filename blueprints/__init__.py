"""Function blueprints, one module per area; `function_app.py` registers them."""
