# Defaults of the 84x84 RGB data sets (sourced by miniimagenet.sh, tieredimagenet.sh and imagefolder.sh before
# scripts/lib/chain.sh); the environment overrides each.
# NOTE: upstream embeds ImageNet with a ResNet-50 (128-d, MoCo v2); ResNet-18 is the smaller default here. MAML as
# CACTUs' miniImageNet MAML (32 channels, 5 inner steps of 0.05) and EP with the few-shot standard ResNet-12.
CFE_ARGS=${CFE_ARGS-"--backbone resnet18 --dim 128"}
MAML_ARGS=${MAML_ARGS-"--hidden 32 --inner-steps 5 --inner-lr 0.05"}
EP_ARGS=${EP_ARGS-"--backbone resnet12"}
TEST_SHOTS=${TEST_SHOTS-"1 5 20 50"}
