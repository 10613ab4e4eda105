# Used for `pip install -e .` (offline work without ROS: simulation, datasets, training, evaluation) and for
# the `collab-perception` console script. colcon builds this repository with ament_cmake (package.xml),
# which ignores this file.
from setuptools import find_packages, setup

setup(
    name='collab_perception',
    version='0.1.0',
    description='Bandwidth-limited collaborative perception for drone swarms on ROS 2',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['collab_perception', 'collab_perception.*']),
    package_data={'collab_perception': ['py.typed']},
    # ONNX Runtime is an extra: the CPU wheel (onnxruntime) and the GPU one (onnxruntime-gpu, or NVIDIA's
    # Jetson wheel) provide the same module and cannot be installed together.
    install_requires=['numpy', 'PyYAML', 'tqdm', 'opencv-python-headless', 'moderngl'],
    extras_require={
        'cpu': ['onnxruntime'],
        'gpu': ['onnxruntime-gpu'],
        'bag': ['rosbags'],
        # exactly this torch: any other spec pulls GBs of CUDA wheels on CPU machines
        'learn': ['torch==2.13.0', 'onnx', 'onnxscript', 'matplotlib'],
        'test': ['pytest', 'hypothesis'],
    },
    entry_points={'console_scripts': ['collab-perception = collab_perception.cli:main']},
)
