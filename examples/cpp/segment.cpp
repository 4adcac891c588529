// A whole image -> semantic map in C++, from the AOTInductor packages of `cmpf export --format aoti`.
//
//   usage: cmpf_segment ARTIFACTS BUNDLE IMAGE.ppm OUT.pgm [SCORES.f32]
//
// ARTIFACTS holds clip_image_encoder, sam_image_encoder, decoder and mask_classifier .fp32.pt2;
// BUNDLE is what examples/cpp/prepare.py wrote (the text classifier of one vocabulary, computed by
// the artifacts' own text encoder, and the constants). The steps are cmpf/pipeline.py's, in its
// order, for one image at its own size (what `cmpf run --no-resize` does): normalise (CLIP and SAM
// constants), zero-pad to the size divisibility, warp the SAM copy to S x S, run the four graphs,
// geometric in/out-vocabulary ensemble, upsample the masks, semantic scores, argmax. Tensor names,
// order and shapes follow cmpf/spec.py. The image is a binary PPM (P6, 8-bit RGB) so that no image
// library is needed; the labels are written as a binary PGM (P5, 8-bit, class index per pixel), and
// optionally the semantic scores they are the argmax of, (K, H, W) float32 raw.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using Meta = std::map<std::string, std::vector<double>>;

static Meta read_meta(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open; run examples/cpp/prepare.py first");
  Meta meta;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key;
    words >> key;
    double value;
    while (words >> value) meta[key].push_back(value);
  }
  return meta;
}

static at::Tensor read_raw(const std::string& path, at::IntArrayRef shape, at::ScalarType dtype) {
  std::ifstream in(path, std::ios::binary);
  at::Tensor t = at::empty(shape, dtype);
  in.read(static_cast<char*>(t.data_ptr()), t.nbytes());
  if (!in) throw std::runtime_error(path + ": shorter than the shape in meta.txt");
  return t;
}

// Binary PPM (P6, maxval 255) -> uint8 (3, H, W).
static at::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string magic;
  int w = 0, h = 0, maxval = 0;
  in >> magic >> w >> h >> maxval;
  if (!in || magic != "P6" || maxval != 255) throw std::runtime_error(path + ": not a binary 8-bit PPM (P6)");
  in.get();  // the one whitespace after the header
  at::Tensor hwc = at::empty({h, w, 3}, at::kByte);
  in.read(static_cast<char*>(hwc.data_ptr()), hwc.nbytes());
  if (!in) throw std::runtime_error(path + ": truncated");
  return hwc.permute({2, 0, 1}).contiguous();
}

static void write_pgm(const std::string& path, const at::Tensor& labels) {
  at::Tensor u8 = labels.to(at::kByte).contiguous();
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << u8.size(1) << " " << u8.size(0) << "\n255\n";
  out.write(static_cast<const char*>(u8.data_ptr()), u8.nbytes());
}

// (x - mean) / std per channel, then zero padding bottom/right to a multiple of `div` (1, 3, Hp, Wp).
static at::Tensor normalize_pad(const at::Tensor& image, const std::vector<double>& mean,
                                const std::vector<double>& std, int64_t div) {
  at::Tensor m = at::tensor(std::vector<float>(mean.begin(), mean.end())).view({-1, 1, 1});
  at::Tensor s = at::tensor(std::vector<float>(std.begin(), std.end())).view({-1, 1, 1});
  at::Tensor x = (image.to(at::kFloat) - m) / s;
  int64_t h = x.size(1), w = x.size(2);
  int64_t hp = (h + div - 1) / div * div, wp = (w + div - 1) / div * div;
  at::Tensor out = at::zeros({1, 3, hp, wp}, at::kFloat);
  out.index_put_({0, at::indexing::Slice(), at::indexing::Slice(0, h), at::indexing::Slice(0, w)}, x);
  return out;
}

// A package reads its inputs as contiguous row-major buffers, whatever their strides say; the CLIP
// encoder's outputs come back channels-last, so every input is made contiguous first (as the Python
// AotiRunner does).
static std::vector<at::Tensor> run(torch::inductor::AOTIModelPackageLoader& graph, std::vector<at::Tensor> inputs) {
  for (at::Tensor& x : inputs) x = x.contiguous();
  return graph.run(inputs);
}

static at::Tensor bilinear(const at::Tensor& x, int64_t h, int64_t w) {
  return at::upsample_bilinear2d(x, {h, w}, /*align_corners=*/false);
}

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::cerr << "usage: " << argv[0] << " ARTIFACTS BUNDLE IMAGE.ppm OUT.pgm [SCORES.f32]\n";
    return 2;
  }
  const std::string artifacts = argv[1], bundle = argv[2];
  try {
    Meta meta = read_meta(bundle + "/meta.txt");
    const int64_t k = meta["shape"][0], s = meta["shape"][1], d = meta["shape"][2];
    at::Tensor text = read_raw(bundle + "/text_embeddings.f32", {k, s, d}, at::kFloat);
    at::Tensor synonyms = read_raw(bundle + "/synonym_mask.u8", {k, s}, at::kByte).to(at::kBool);
    at::Tensor seen = at::tensor(std::vector<float>(meta["seen"].begin(), meta["seen"].end()));
    const double alpha = meta["alpha"][0], beta = meta["beta"][0];
    const int64_t div = meta["divisibility"][0], sam_size = meta["sam_size"][0];
    if (meta["valid_mask"][0] != 0) throw std::runtime_error("ensemble_on_valid_mask is not implemented here");
    auto load = [&](const std::string& graph) {
      return torch::inductor::AOTIModelPackageLoader(artifacts + "/" + graph + ".fp32.pt2");
    };
    auto clip_encoder = load("clip_image_encoder"), sam_encoder = load("sam_image_encoder");
    auto decoder = load("decoder"), mask_classifier = load("mask_classifier");

    // preprocess: the CLIP copy (/div-padded) and the SAM copy (padded alike, then warped to S x S)
    at::Tensor image = read_ppm(argv[3]);
    const int64_t h = image.size(1), w = image.size(2);
    at::Tensor clip = normalize_pad(image, meta["clip_mean"], meta["clip_std"], div);
    at::Tensor sam = bilinear(normalize_pad(image, meta["sam_mean"], meta["sam_std"], div), sam_size, sam_size);
    // encode_image: res2..res5; the SAM neck's embedding
    std::vector<at::Tensor> feats = run(clip_encoder, {clip});
    at::Tensor sam_embedding = run(sam_encoder, {sam}).at(0);
    // decode: pred_logits (1, Q, K+1), pred_masks (1, Q, H/4, W/4)
    std::vector<at::Tensor> dec = run(decoder, {feats[0], feats[1], feats[2], feats[3], sam_embedding, text, synonyms});
    at::Tensor out_vocab = run(mask_classifier, {feats[3], dec[1], text, synonyms}).at(0);
    // ensemble (cmpf/ensemble.py geometric_ensemble): (1, Q, K+1) log-probabilities, void last
    at::Tensor in_logits = dec[0];
    at::Tensor p_in = in_logits.slice(-1, 0, k).softmax(-1), p_out = out_vocab.slice(-1, 0, k).softmax(-1);
    at::Tensor seen_term = (p_in.pow(1 - alpha) * p_out.pow(alpha)).log() * seen;
    at::Tensor unseen_term = (p_in.pow(1 - beta) * p_out.pow(beta)).log() * (1 - seen);
    at::Tensor p_void = in_logits.softmax(-1).slice(-1, k, k + 1);
    at::Tensor probs = at::cat({(seen_term + unseen_term).softmax(-1) * (1.0 - p_void), p_void}, -1);
    at::Tensor mask_cls = at::log(probs + 1e-8)[0];
    // postprocess (cmpf/postprocess.py): masks to the padded size, crop, to the image size; scores; argmax
    at::Tensor masks = bilinear(dec[1][0].unsqueeze(0), clip.size(2), clip.size(3));
    masks = bilinear(masks.slice(2, 0, h).slice(3, 0, w), h, w)[0];
    at::Tensor semantic = at::einsum("qc,qhw->chw", {mask_cls.softmax(-1).slice(-1, 0, k), masks.sigmoid()});
    write_pgm(argv[4], semantic.argmax(0));
    if (argc == 6) {
      at::Tensor scores = semantic.contiguous();
      std::ofstream(argv[5], std::ios::binary).write(static_cast<const char*>(scores.data_ptr()), scores.nbytes());
    }
    std::cout << "semantic " << h << "x" << w << ", " << k << " classes -> " << argv[4] << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
