// Run the text_encoder graph exported by `cmpf export --format aoti` from C++, without Python.
//
//   usage: cmpf_aoti_text_encoder ARTIFACTS/text_encoder.fp32.pt2
//
// The package holds the compiled graph and its weights; AOTIModelPackageLoader unpacks and loads it.
// Inputs and outputs follow cmpf/spec.py: token_ids (num_prompts, 77) int64 -> text_features
// (num_prompts, D) float32. num_prompts is dynamic.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " PATH/text_encoder.fp32.pt2\n";
    return 2;
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);

  // Three prompts of open_clip token ids: start-of-text, 6 tokens, end-of-text, zero padding.
  const int64_t num_prompts = 3, context_length = 77;
  at::manual_seed(0);
  at::Tensor tokens = at::zeros({num_prompts, context_length}, at::kLong);
  tokens.select(1, 0).fill_(49406);
  tokens.slice(1, 1, 7).copy_(at::randint(1, 49000, {num_prompts, 6}, at::kLong));
  tokens.select(1, 7).fill_(49407);

  std::vector<at::Tensor> outputs = loader.run({tokens});
  const at::Tensor& features = outputs.at(0);
  std::cout << "text_features " << features.sizes() << " " << features.dtype() << ", L2 norms:";
  for (int64_t i = 0; i < features.size(0); ++i) {
    std::cout << " " << features[i].norm().item<float>();
  }
  std::cout << std::endl;
  return 0;
}
