from setuptools import find_packages, setup

setup(
    name="cmpf",
    version="0.1.0",
    description="Deployment toolchain for CMPF / FrozenSeg and FC-CLIP open-vocabulary segmentation",
    packages=find_packages(include=["cmpf", "cmpf.*"]),
    package_data={"cmpf": ["py.typed", "assets/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "scipy",
        "tqdm",
        "open_clip_torch",
        "timm",
        "segment-anything",
        "pycocotools",
    ],
    extras_require={
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "triton": ["triton"],
        "trt": ["tensorrt"],
        "openvino": ["openvino"],
        "precision": ["onnx", "onnxruntime"],
        "bench": ["matplotlib"],
        # cmpf serve / cmpf client: the Triton server binary (in nvidia-pytriton's wheel) and its client
        "serve": ["nvidia-pytriton", "tritonclient[http,grpc]"],
        "dev": ["pytest", "onnx", "onnxruntime", "onnxscript", "triton", "import-linter", "matplotlib", "openvino",
                "nvidia-pytriton", "tritonclient[http,grpc]"],
    },
    entry_points={"console_scripts": ["cmpf=cmpf.cli:main"]},
)
