"""The guest image builder (pykata's osbuilder): ``pykata-image build``."""
