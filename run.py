"""Hydra entry point: one run of model x compressor x benchmark, or a grid of them with ``-m``.

    python run.py                                        # the embedded default: SmolLM2 on CPU, NIAH, SnapKV 4-bit
    python run.py -m pruner=snapkv,pyramidkv bits=4,8,16 # six runs
    python run.py -m experiment=fig2                     # a paper figure's grid (see experiments/)
"""

import hydra
from omegaconf import DictConfig

from qpruning.runner import register_resolvers, run_job

register_resolvers()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
