"""userlm-local: run User LMs (user simulators) locally.

Heavy engines (torch, llama.cpp, onnxruntime-genai) are imported lazily inside
the backend that needs them; importing this package stays cheap.
"""

__version__ = "0.1.0"
