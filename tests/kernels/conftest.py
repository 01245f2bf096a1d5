"""The decode kernels' tests run on CPU through Triton's interpreter unless a GPU is here.

``TRITON_INTERPRET`` must be set before anything imports ``triton.language`` (hqq and transformers do, while
other test folders are collected), so the root ``tests/conftest.py`` sets it on machines without a CUDA device.
On a GPU machine the compiled kernels are tested on the device; ``TRITON_INTERPRET=1`` forces the interpreter.
"""
