"""Training of reward-edit models (stage 1: InstructPix2Pix, stage 2: multi-reward) with accelerate.

    reward-edit train --stage 2 ...                           # the CLI verb
    accelerate launch -m reward_edit_pipeline.train --stage 2 ...   # the same program, scaled out

`main(argv)` parses the flags (`args.parse_args`) and runs `train.train(args)`. Importing this package loads nothing
heavy; inference code never imports it. Accelerate configs for DDP, FSDP and DeepSpeed ZeRO-2 are in `configs/`.
"""
