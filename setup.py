from setuptools import find_packages, setup

setup(
    name='ebm_det',
    version='0.1.0',
    description='Energy-based box refinement (NCE+) for MMDetection 3.x and MMDetection3D 1.x',
    packages=find_packages(include=['ebm_det', 'ebm_det.*']),
    python_requires='>=3.8',
    install_requires=[],  # the OpenMMLab stack is installed by tools/install.sh
)
