// Qwen2_5_VLForConditionalGeneration: a vision transformer over image patches (window attention
// with full attention on some blocks, 2-D rotary positions, a merger of 2x2 patches into one LLM
// token) whose outputs replace the image placeholder tokens of the Qwen2 decoder, which rotates
// with M-RoPE (temporal, height and width positions). The host-side index computations live here
// so that tests and the model share them; the forward is in qwen2_5_vl.cc.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace tiller::models {

struct VisionConfig {
  int64_t depth = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_heads = 0;
  int64_t in_channels = 3;
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  int64_t window_size = 112;  // pixels
  int64_t out_hidden_size = 0;
  std::vector<int64_t> fullatt_block_indexes;
  double rope_theta = 10000.0;

  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
  int64_t merge_unit() const { return spatial_merge_size * spatial_merge_size; }
};

// M-RoPE positions of a packed batch, as transformers' get_rope_index computes them per sequence:
// text tokens advance all three positions by one; an image's placeholder tokens get (t, h, w)
// positions over its merged grid starting at the current position, after which the position
// advances by max(h, w) / merge. grids: [images * 3] (t, h, w in patches), consumed in token order
// across the sequences. An image is the run of placeholders right after a vision-start token (as
// the processor writes them); a placeholder elsewhere (a model may generate one) is text.
struct MropePositions {
  at::Tensor positions;            // [3, tokens] int64, host
  std::vector<int64_t> deltas;     // [sequences]: last position + 1 - length (what generated tokens add)
  std::vector<int64_t> image_rows;  // the tokens the images' embeddings replace, in order
  int64_t images_used = 0;
};
MropePositions mrope_positions(const at::Tensor& tokens_cpu, const std::vector<int64_t>& cu,
                               const std::vector<int64_t>& grids, int64_t image_token_id,
                               int64_t vision_start_token_id, int64_t merge);

// How the vision tower orders and groups the patches of a batch of images.
struct VisionLayout {
  at::Tensor window_index;        // [patches / merge²] int64: merged groups in window order
  at::Tensor positions;           // [patches, 2] int64: (row, column) of each patch, in patch order
  std::vector<int64_t> cu_windows;  // window boundaries in window order (window attention)
  std::vector<int64_t> cu_frames;   // one segment per image frame (full attention)
};
VisionLayout vision_layout(const std::vector<int64_t>& grids, const VisionConfig& config);

}  // namespace tiller::models
