"""Install vistok: the root folders are mapped into the ``vistok`` namespace.

``modeling/`` -> ``vistok.modeling``, ``processing/`` -> ``vistok.processing``, ``conversion/`` ->
``vistok.conversion``; the root ``__init__.py``, ``evaluation.py`` and ``tokenize_dataset.py`` form ``vistok`` itself. Nothing is installed as
a bare top-level ``modeling``/``processing``/``conversion`` package.
"""

from setuptools import setup
from setuptools.command.build_py import build_py


class _BuildPy(build_py):
    """Keep the repository's own ``setup.py`` out of the installed ``vistok`` package."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "vistok" and m[1] == "setup")]


setup(
    name="vistok",
    version="0.1.0",
    description="Visual tokenizers and multimodal models of the recent literature as native transformers models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={
        "vistok": ".",
        "vistok.modeling": "modeling",
        "vistok.processing": "processing",
        "vistok.conversion": "conversion",
    },
    packages=["vistok", "vistok.modeling", "vistok.processing", "vistok.conversion"],
    cmdclass={"build_py": _BuildPy},
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "transformers>=5.24,<6",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "datasets>=3.0",
        "peft>=0.21",
        "accelerate>=1.0",
        "torchmetrics>=1.4",
        "diffusers>=0.32",
        "pyyaml",
        "pillow",
        "tqdm",
        "sentencepiece",  # InternLM2.5-based InternVL2.5 releases ship a sentencepiece tokenizer.model
        "protobuf",
    ],
    extras_require={
        "test": ["pytest>=8", "av", "hypothesis>=6", "scipy"],
        "video": ["av"],
        "metrics": ["torch-fidelity", "scipy"],
    },
    entry_points={
        "console_scripts": [
            "vistok-convert=vistok.conversion.__main__:main",
            "vistok-eval=vistok.cli:eval_main",
            "vistok-tokenize=vistok.cli:tokenize_main",
        ]
    },
)
