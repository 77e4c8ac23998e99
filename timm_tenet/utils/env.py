"""What a figure was measured with: printed beside every measured figure (demo, study, benchmarks), since the
same command gives other numbers under another torch or timm."""
import platform

__all__ = ['versions']


def versions() -> str:
    """``torch X, timm Y, <device>`` (the GPU's name, else the CPU with its torch thread count)."""
    import timm
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f'CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads'
    return f'torch {torch.__version__}, timm {timm.__version__}, {device}'
