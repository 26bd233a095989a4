"""molmo-jax: Molmo vision-language models in JAX / Flax NNX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.6,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "ml-collections>=1.0,<2",
    "absl-py>=2.0,<3",
    "numpy>=1.26,<3",
    "scipy>=1.11,<2",
    "pillow>=10.1,<14",
    "pyarrow>=14,<27",
    "safetensors>=0.4,<1",
    "tokenizers>=0.20,<1",
    "sentencepiece>=0.2,<0.3",
    "huggingface_hub>=0.24,<3",
    "tqdm>=4.60,<5",
    "editdistance>=0.8,<0.9",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8,<0.9",
    "tensorflow-datasets>=4.9.10,<5",
    "tensorboardX>=2.6,<3",
    "matplotlib>=3.7,<4",  # the demo report's loss curves
]

EXTRAS = {
    "test": [
        "pytest>=8,<10", "ruff>=0.6,<1", "scikit-image>=0.24,<0.27", "selenium>=4.20,<5",
        "fastapi>=0.110,<1", "uvicorn>=0.29,<1", "httpx>=0.27,<1", "tensorboardX>=2.6,<3",
        "nbclient>=0.10,<1", "nbformat>=5.9,<6", "ipykernel>=6.29,<8",
    ],
    "serve": ["fastapi>=0.110,<1", "uvicorn>=0.29,<1", "httpx>=0.27,<1"],
    "cuda": ["jax[cuda12]>=0.6,<0.11"],
    "tpu": ["jax[tpu]>=0.6,<0.11"],
    # Only for reading MolmoE-1B's pickled checkpoint (weights_only) and parity work.
    "torch": ["torch>=2.4,<2.15"],
}

setup(
    name="molmo-jax",
    version="0.1.0",
    description="Molmo vision-language models (MolmoE-1B, Molmo-7B-O/D, Molmo-72B) in JAX / Flax NNX",
    packages=find_packages(include=["molmo_jax", "molmo_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
