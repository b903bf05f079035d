"""Networks the encoders are built from: image backbones (timm, torchvision, a tiny CNN)
and text towers (MiniLM, a small open_clip transformer)."""
