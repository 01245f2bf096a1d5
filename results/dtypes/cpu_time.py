"""CPU time (not wall time: the machine is shared) of SmolLM2 on this CPU in float32 and bfloat16, one thread:
a 1,000-token prefill and 16 decode steps through SnapKV + KIVI 4-bit (the end-to-end runs' setting), twice each.

    PYTHONPATH=$PWD python results/dtypes/cpu_time.py
"""

import time

import torch

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.models import ModelSpec
from qpruning.transformers_api import cache_kwargs

torch.set_num_threads(1)
ids = torch.randint(100, 40000, (1, 1000), generator=torch.Generator().manual_seed(0))
for dtype in ("float32", "bfloat16"):
    model, _ = ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m", dtype=dtype, device="cpu").load()
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=64), tokens=512)
    for repeat in range(2):
        with compressor.attach(model), torch.no_grad():
            cache = compressor.new_cache(model)
            start = time.process_time()
            out = model(ids, **cache_kwargs(model, cache), logits_to_keep=1)
            prefill = time.process_time() - start
            start = time.process_time()
            for i in range(16):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                position = torch.tensor([[ids.shape[1] + i]])
                out = model(token, **cache_kwargs(model, cache), position_ids=position, logits_to_keep=1)
            decode = time.process_time() - start
        print(f"{dtype} run {repeat}: prefill {prefill:.2f} s CPU, 16 decode steps {decode:.2f} s CPU")
