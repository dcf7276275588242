from .reward_conditioner import RewardConditionEmbeddings, RewardConditioner
from .unet_2d_reward import LatentRewardAttention, RewardUNet2DConditionModel

__all__ = ["LatentRewardAttention", "RewardConditionEmbeddings", "RewardConditioner", "RewardUNet2DConditionModel"]
