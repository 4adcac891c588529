// A whole image -> semantic map and panoptic segments in C++, from the AOTInductor packages of
// `cmpf export --format aoti`.
//
//   usage: cmpf_segment ARTIFACTS BUNDLE IMAGE.ppm OUT_DIR [PRECISION]   (default fp32: <graph>.fp32.pt2)
//
// ARTIFACTS holds clip_image_encoder, sam_image_encoder, decoder and mask_classifier .fp32.pt2
// (loaded with libtorch's AOTIModelPackageLoader); BUNDLE is what examples/cpp/prepare.py wrote (the
// text classifier of one vocabulary, computed by the artifacts' own text encoder, the constants and
// the graphs' tensor names). Everything but the graph calls is pipeline.hpp's, shared with the
// TensorRT variant (segment_trt.cpp); OUT_DIR receives what pipeline.hpp's write_result lists.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <memory>

#include "pipeline.hpp"

using Loader = torch::inductor::AOTIModelPackageLoader;

// A package takes its inputs positionally, in cmpf/spec.py's order, and reads them as contiguous
// row-major buffers whatever their strides say; the CLIP encoder's outputs come back channels-last,
// so every input is made contiguous first (as the Python AotiRunner does).
static cmpf::Tensors run_package(Loader& package, const cmpf::GraphIO& io, const cmpf::Tensors& named) {
  std::vector<at::Tensor> inputs;
  for (const std::string& name : io.inputs) inputs.push_back(named.at(name).contiguous());
  std::vector<at::Tensor> outputs = package.run(inputs);
  if (outputs.size() != io.outputs.size())
    throw std::runtime_error("a package returned " + std::to_string(outputs.size()) + " outputs, graphs.txt names " +
                             std::to_string(io.outputs.size()));
  cmpf::Tensors out;
  for (size_t i = 0; i < outputs.size(); ++i) out[io.outputs[i]] = outputs[i];
  return out;
}

int main(int argc, char** argv) {
  return cmpf::main_with(argc, argv, "ARTIFACTS BUNDLE IMAGE.ppm OUT_DIR [PRECISION]",
                         [](const std::string& artifacts, const cmpf::Bundle&, const std::string& precision) {
    auto packages = std::make_shared<std::map<std::string, std::unique_ptr<Loader>>>();
    for (const std::string& graph : cmpf::kImageGraphs)
      (*packages)[graph] = std::make_unique<Loader>(artifacts + "/" + graph + "." + precision + ".pt2");
    return cmpf::RunGraph([packages](const std::string& graph, const cmpf::GraphIO& io, const cmpf::Tensors& named) {
      return run_package(*packages->at(graph), io, named);
    });
  });
}
