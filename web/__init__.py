"""OmniPath's web layer: the Gradio app, the deep-zoom tile routes and the slide viewer."""
