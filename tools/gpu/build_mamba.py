"""Build mamba-ssm's selective_scan_cuda (the benchmarks' baseline) from its sdist for ONE arch.

mamba-ssm's setup.py compiles every arch from sm_75 to sm_121 whatever TORCH_CUDA_ARCH_LIST says
(9 heavy .cu files x 8 archs: far past a device lease); this unpacks the sdist, keeps only the
-gencode pair of the requested arch and builds the extension in place. Afterwards put DEST/SRC on
PYTHONPATH: it holds both `selective_scan_cuda` and the `mamba_ssm` package.
    python -m tools.gpu.build_mamba SDIST DEST [--arch 90]
"""
import argparse
import os
import re
import subprocess
import sys
import tarfile


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sdist")
    parser.add_argument("dest")
    parser.add_argument("--arch", default="90")
    args = parser.parse_args()
    with tarfile.open(args.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(args.dest, filter="data")
    src = os.path.join(args.dest, top)
    setup_py = os.path.join(src, "setup.py")
    text = open(setup_py).read()
    # Each other arch's pair becomes `pass`, so that an `if` around it keeps a body.
    pair = r'( *)cc_flag\.append\("-gencode"\)\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)\n'
    text = re.sub(pair, lambda m: m.group(0) if m.group(2) == args.arch else f"{m.group(1)}pass\n", text)
    assert f"arch=compute_{args.arch}," in text, f"no sm_{args.arch} gencode left in {setup_py}"
    open(setup_py, "w").write(text)
    env = dict(os.environ, MAMBA_FORCE_BUILD="TRUE", MAMBA_SKIP_CUDA_BUILD="FALSE")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env, check=True)
    print(src)


if __name__ == "__main__":
    main()
