from braggflow.ml.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before anything imports torch: the kernels training ran on (braggflow.ml.determinism)

from braggflow.logs import logged  # noqa: E402
from braggflow.ml.predict import predict_file  # noqa: E402
from braggflow.settings import TrainingRun, TrainingSettings  # noqa: E402

with logged(snakemake.log[0]) as log:
    run = TrainingRun.from_job(snakemake.config, snakemake.threads, log)
    predict_file(snakemake.input.frames, snakemake.input.card, snakemake.input.weights, snakemake.output[0],
                 training=TrainingSettings.from_params(snakemake.params.training), run=run,
                 onnx_path=snakemake.input.get("onnx"), hits_path=snakemake.input.get("hits"),
                 hit_gate=snakemake.params.hit_gate, log=log)
