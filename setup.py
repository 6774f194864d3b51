"""vllama-jax: VideoLLaMA 2 in JAX/Flax."""
from setuptools import find_packages, setup


def _requirements(name):
    with open(name) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith(("#", "-r"))]


setup(
    name="vllama-jax",
    version="0.1.0",
    description="VideoLLaMA 2 (audio-visual video LLM) in JAX/Flax: exact parity, jitted inference, sharded training",
    packages=find_packages(include=["vllama_jax", "vllama_jax.*", "data_pipelines", "data_pipelines.*", "benchmarks"]),
    package_data={"vllama_jax.kernels": ["*.cc"]},  # the CPU decode kernel's source, compiled on first use
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt"), "plan": _requirements("requirements-libtpu.txt")},
    entry_points={"console_scripts": ["vllama-jax=vllama_jax.cli:main"]},
)
