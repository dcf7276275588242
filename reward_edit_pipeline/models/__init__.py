from .unet_2d_reward import LatentRewardAttention, RewardUNet2DConditionModel

__all__ = ["LatentRewardAttention", "RewardUNet2DConditionModel"]
