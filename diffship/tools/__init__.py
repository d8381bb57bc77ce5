"""Small tools the README's recipes use, shipped with the package so that an installed diffship has them too:
``python -m diffship.tools.make_mask`` (an inpainting mask) and ``python -m diffship.tools.make_lora`` (a LoRA made
with peft on a diffusers folder, for trying LoRAs without a hub)."""
