"""The MotionFollower diffusion model stack (method.md §C, §D).

Public API (other subsystems code against these names):

* `config.get_config("official" | "tiny" | "demo") -> ModelConfig`; `ModelConfig.feature_shapes(H, W)`.
* `unet3d.UNet3DConditionModel(config)`: forward(sample (B,4,F,h,w), timestep, encoder_hidden_states (B,F,D),
  pose_features=None, appearance_features=None, attention_hook=None) -> v-prediction (B,4,F,h,w);
  `features(..., levels)` -> {i: up_blocks[i] output (B,C,F,h_i,w_i)} (early exit);
  `forward_with_features(..., levels)` -> (v-prediction, features) from one pass. ReCtr lives
  at `unet.appearance_adapter`. See unet3d.py's docstring for the details.
* `controllers.PoseController(config)`: pose (B,3,F,H,W) in [0,1] -> (B,C0,F,H/8,W/8), zero-initialised output.
  `controllers.ReferenceController(config)`: frames (B,F,3,H,W) in [-1,1] -> list of (B,C_k,F,h_k,w_k).
* `loading.MotionFollowerModels(unet, pose_controller, image_encoder, vae, config_name, ...)`,
  `load_models(model, models_dir, device, dtype)`, `save_models(models, folder)`, `build_models(config_name, seed)`.
* `estimator.build_estimator(models, "shared" | "official", models_dir, seed)`: the guidance feature extractor.
* `clip.clip_pixels(frames, size)`: the reference's CLIP preprocessing.
* `state.load_state_file(path)` (safe loading), `state.load_into(factory, state, ...)`.
* `checkpoints.weights_command(args)`: `python -m mf_backend weights manifest|verify|convert`.
* Benchmarks of these models: `python -m mf_backend bench forward|graphs|speed` (mf_backend/bench).

Submodules import torch; this package's __init__ does not.
"""
