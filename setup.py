from setuptools import find_packages, setup

setup(
    name="artstyle",
    version="0.1.0",
    description="Self-supervised art-style representations (attention fusion, distillation, "
    "soft contrast, learnable Gram) as Hugging Face models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["artstyle", "artstyle.*"]),
    py_modules=["run_pretrain", "run_finetune"],
    include_package_data=True,
    package_data={"artstyle": ["metrics/*/*.py", "metrics/*/*.md"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0",
        "datasets>=3.0",
        "accelerate>=1.0",
        "timm>=1.0",
        "huggingface_hub>=1.0",
        "evaluate>=0.4",
        "safetensors",
        "pillow",
        "numpy",
        "matplotlib",
        "tensorboard",
        "scikit-learn",
        "tqdm",
        "requests",
        "filelock>=3.0",
    ],
    extras_require={
        # the browser app (app.py); selenium drives Debian's chromium + chromium-driver in its browser test
        "app": ["gradio>=6.0,<7", "selenium>=4.11"],
        # dev includes the app extra: the README's test command runs the app's tests, which fail without it
        "dev": ["pytest", "ruff", "gradio>=6.0,<7", "selenium>=4.11"],
    },
    entry_points={
        "console_scripts": [
            "artstyle-pretrain=run_pretrain:cli",
            "artstyle-finetune=run_finetune:cli",
            "artstyle-predict=artstyle.cli:predict_main",
            "artstyle-similar=artstyle.cli:similar_main",
            "artstyle-download=artstyle.data.download:main",
        ]
    },
)
