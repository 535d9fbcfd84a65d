#!/usr/bin/env python
"""panoptic_ext: Panoptic Feature Pyramid Networks as Detectron2 plugins."""

from setuptools import find_packages, setup

setup(
    name="panoptic_ext",
    version="0.1.0",
    description="Panoptic FPN (Kirillov et al., 2019) as Detectron2 plugins",
    # panoptic_pq: the PQ library of `panoptic-pq` (numpy, Pillow, hotcoco; no torch)
    packages=find_packages(include=("panoptic_ext", "panoptic_ext.*", "panoptic_pq")),
    python_requires=">=3.8",
    # torch, torchvision and detectron2 are installed by tools/setup_env.sh (see README):
    # detectron2 is not on PyPI, and torch must match it.
    install_requires=[
        "numpy",
        "pillow",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "matplotlib",
        "tqdm",
        # default PQ engine (Rust); without it PQ uses Pillow + numpy (same numbers)
        "hotcoco",
    ],
    extras_require={
        "cityscapes": ["cityscapesscripts"],
        # panoptic_ext.apps.export (tools/export_model.py, PanopticONNXPredictor);
        # pins: constraints.txt
        "export": ["onnx", "onnxruntime"],
    },
    entry_points={
        "console_scripts": [
            "panoptic-pq=panoptic_pq.cli:main",
        ]
    },
)
