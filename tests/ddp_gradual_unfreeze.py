"""Run under `accelerate launch --multi_gpu --num_processes 2 ...`: gradual unfreezing with DDP on CPU (gloo).

Each rank trains the same tiny model for a few steps across two unfreezing steps and saves its final weights
(and BatchNorm statistics) as rank<N>.safetensors in the folder given as argv[1]; the test compares them.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

from hf_transfer import load_backbone
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.trainer import TransferTrainer


class RankImages(torch.utils.data.Dataset):
    def __init__(self, n=32, size=32):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(100 + rank)  # different seeds per rank: DDP must still make the weights identical
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=2e-2, gradual_unfreeze_epochs=1, freeze="depth:1"))
    args = TrainingArguments(output_dir=os.path.join(out_dir, "run"), use_cpu=True, num_train_epochs=3,
                             per_device_train_batch_size=4, report_to=[], save_strategy="no", logging_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0, warmup_steps=1)
    trainer = TransferTrainer(model=model, args=args, plan=plan, train_dataset=RankImages())
    trainer.train()
    assert trainer.accelerator.num_processes == 2, "run me with accelerate launch --num_processes 2"
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(out_dir, f"rank{rank}.safetensors"), metadata={"trainable": ",".join(trainable)})


if __name__ == "__main__":
    main(sys.argv[1])
