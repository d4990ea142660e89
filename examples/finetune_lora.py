"""LoRA fine-tuning of a vistok tokenizer's decoder on an image folder, with `transformers.Trainer` and peft.

```
python examples/finetune_lora.py MODEL DATA --output-dir OUT [--max-steps 200] [--learning-rate 5e-4]
       [--batch-size 8] [--lora-r 8] [--lora-alpha 16] [--target-modules REGEX] [--merge]
```

MODEL: a converted tokenizer (local directory or Hub id, loaded with `AutoModel` + `AutoImageProcessor`). DATA: an
image folder or a Hub dataset id (read as in `vistok-eval`). The training target is the input itself: the collator
gives the model `pixel_values` and `labels = pixel_values`, and the tokenizer's `forward` returns the reconstruction
loss (MSE, plus the quantizer loss in training mode). Only the LoRA matrices train; by default they wrap the query and
value projections of the decoder's attention layers (`--target-modules` is a regex matched against full module names,
as peft does).

The script then
  * writes the adapter to `OUT/adapter` (`PeftModel.save_pretrained`),
  * reloads it onto a freshly loaded base model with `PeftModel.from_pretrained` and checks that the reloaded model
    reconstructs a fixed batch exactly as the trained one,
  * with `--merge`, merges the adapter into the weights and saves a plain model (plus the image processor) to
    `OUT/merged`, which `vistok-eval OUT/merged DATA` evaluates,
  * prints and writes `OUT/summary.json`: the reconstruction loss on a fixed batch before and after training, the
    training losses, the reload difference.

peft 0.21 is older than the version transformers 5.x needs for `model.add_adapter`, so this uses peft's own API
(`get_peft_model`, `PeftModel.from_pretrained`, `merge_and_unload`).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoImageProcessor, AutoModel, Trainer, TrainingArguments

import vistok  # noqa: F401  (registers the vistok models with the Auto classes)
from vistok.evaluation import load_image_dataset


DEFAULT_TARGET_MODULES = r".*decoder.*\.(q_proj|v_proj)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LoRA fine-tuning of a vistok tokenizer's decoder.")
    parser.add_argument("model", help="tokenizer directory or Hub id")
    parser.add_argument("data", help="image folder or Hub dataset id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--split", default=None, help="dataset split (default: validation, else test, else train)")
    parser.add_argument("--max-images", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--target-modules", default=DEFAULT_TARGET_MODULES,
                        help="regex over full module names (default: decoder attention q/v projections)")
    parser.add_argument("--eval-images", type=int, default=8, help="size of the fixed batch the loss is measured on")
    parser.add_argument("--merge", action="store_true", help="also save the merged model to OUTPUT_DIR/merged")
    parser.add_argument("--seed", type=int, default=0)
    return parser


class ReconstructionCollator:
    """Rows of an image dataset -> `{"pixel_values": [B, C, H, W], "labels": the same tensor}`."""

    def __init__(self, image_processor, image_column: str):
        self.image_processor = image_processor
        self.image_column = image_column

    def __call__(self, rows: list[dict]) -> dict:
        images = [row[self.image_column].convert("RGB") for row in rows]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": pixel_values.clone()}


@torch.no_grad()
def reconstruction_loss(model, batch: dict) -> float:
    """Loss of `model` (switched to eval mode) on one fixed batch."""
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(0)  # stochastic decoders (FlexTok) draw the same noise for every measurement
    return model(**{k: v.to(device) for k, v in batch.items()}).loss.item()


@torch.no_grad()
def reconstruct(model, pixel_values: torch.Tensor) -> torch.Tensor:
    model.eval()
    torch.manual_seed(0)  # stochastic decoders (FlexTok) draw the same noise for every reconstruction
    return model(pixel_values.to(next(model.parameters()).device)).reconstruction.float().cpu()


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    torch.manual_seed(args.seed)

    dataset, image_column, _ = load_image_dataset(args.data, args.split, args.max_images)
    image_processor = AutoImageProcessor.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32)
    collator = ReconstructionCollator(image_processor, image_column)
    eval_batch = collator([dataset[i] for i in range(min(args.eval_images, len(dataset)))])

    lora_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             target_modules=args.target_modules)
    model = get_peft_model(model, lora_config)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    if not trainable or any("lora_" not in name for name in trainable):
        raise RuntimeError(f"expected only LoRA parameters to train, got {trainable}.")
    num_trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    num_total = sum(param.numel() for param in model.parameters())
    print(f"LoRA on {len(trainable) // 2} modules: {num_trainable} trainable of {num_total} parameters")

    loss_before = reconstruction_loss(model, eval_batch)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,        # the collator needs the raw image column
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    loss_after = reconstruction_loss(model, eval_batch)

    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    trained = reconstruct(model, eval_batch["pixel_values"])
    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(args.model, dtype=torch.float32), adapter_dir)
    reload_diff = (reconstruct(reloaded, eval_batch["pixel_values"]) - trained).abs().max().item()
    if reload_diff > 1e-5:
        raise RuntimeError(f"the reloaded adapter reconstructs differently from the trained one (max |diff| "
                           f"{reload_diff:.3g}).")

    summary = {
        "model": args.model,
        "target_modules": args.target_modules,
        "trainable_parameters": num_trainable,
        "steps": trainer.state.global_step,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "train_losses": train_losses,
        "adapter_dir": str(adapter_dir),
        "reload_max_abs_diff": reload_diff,
    }
    if args.merge:
        merged = reloaded.merge_and_unload()
        summary["merge_max_abs_diff"] = (reconstruct(merged, eval_batch["pixel_values"]) - trained).abs().max().item()
        merged.save_pretrained(output_dir / "merged")
        image_processor.save_pretrained(output_dir / "merged")
        summary["merged_dir"] = str(output_dir / "merged")

    print(f"reconstruction loss on {len(eval_batch['pixel_values'])} images: {loss_before:.5f} -> {loss_after:.5f}")
    print("training losses: " + " ".join(f"{loss:.4f}" for loss in train_losses))
    print(f"adapter saved to {adapter_dir}; reloaded max |diff| = {reload_diff:.2e}")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
